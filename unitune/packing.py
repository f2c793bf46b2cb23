"""Packing: several tokenized examples share a row, with no attention across them.

Positions restart at every example and the collator passes no attention mask: transformers then builds a
block-diagonal causal mask from the position ids (masking_utils.find_packed_sequence_indices) for SDPA,
eager and flash attention alike. The first label of every example is -100, so the loss covers exactly the
tokens the unpacked examples are trained on (a row never predicts one example from the one before it).
`isolation_error` measures that this holds on the attention path in use, before a packed run starts.
"""

from __future__ import annotations

from unitune.errors import UnituneError

# packed vs unpacked logits on the attention backend in use: absolute in fp32; in 16-bit types, relative to
# the largest logit (their rounding alone moves logits by ~2^-8 of their size when the matmul shapes change)
TOLERANCE = {"float32": 1e-4, "float64": 1e-4, "bfloat16": 2e-2, "float16": 1e-2}


def _lengths(examples) -> list[int]:
    if isinstance(examples, list):
        return [len(e["input_ids"]) for e in examples]
    # an Arrow dataset keeps every example's length in a column, read at once from the table, through a split's
    # (select's) index mapping where there is one (datasets' own row access takes seconds per million)
    if not hasattr(examples, "_indices"):  # a datasets version without it: its own row access
        return examples.select_columns(["length"]).with_format("numpy")[:]["length"].tolist()
    column, mapping = examples.data.column("length"), examples._indices
    return (column if mapping is None else column.take(mapping.column(0))).to_pylist()


def best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing, the examples of one length placed together: the longest first, each pass over the
    rows (kept in buckets by free room) gives one example to every row that holds it, least room first; where
    none has room, new rows are filled with as many as fit. The work is the number of examples plus (distinct
    lengths x capacity x passes), so a million examples take about a second."""
    import numpy as np

    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable").tolist()
    rows: list[list[int]] = []
    by_room: list[list[int]] = [[] for _ in range(capacity + 1)]  # free room -> rows with exactly that room
    at = 0
    while at < len(order):
        need = lengths[order[at]]
        if need > capacity:
            raise UnituneError(f"packing: an example of {need} tokens is longer than a row of {capacity}")
        end = at
        while end < len(order) and lengths[order[end]] == need:
            end += 1
        while at < end:
            placed = False
            for room in range(max(need, 1), capacity + 1):
                bucket = by_room[room]
                if bucket:
                    take = min(len(bucket), end - at)
                    chosen, by_room[room] = bucket[:take], bucket[take:]
                    for row, index in zip(chosen, order[at:at + take]):
                        rows[row].append(index)
                    by_room[room - need].extend(chosen)
                    at, placed = at + take, True
                    if at == end:
                        break
            if not placed:  # no row has room: new rows, each filled with as many as fit
                per_row = capacity // max(need, 1)
                while at < end:
                    members = order[at:at + per_row]
                    by_room[capacity - need * len(members)].append(len(rows))
                    rows.append(members)
                    at += len(members)
    return rows


def pack(examples, capacity: int):
    """Packed rows of at most `capacity` tokens (best-fit decreasing); each row keeps its examples' lengths.
    `examples` is a list of {"input_ids", "labels"} (rows returned as a list) or the Arrow dataset of
    unitune.data.prepare (rows returned as PackedRows, joined when read)."""
    plan = best_fit(_lengths(examples), capacity)
    if isinstance(examples, list):
        return [join([examples[i] for i in members]) for members in plan]
    return PackedRows(examples, plan)


class PackedRows:
    """Rows of an Arrow dataset, packed as `plan` says and joined only when the Trainer reads one. The plan is
    kept as two integer arrays (every row's example indices one after another, and where each row starts), so
    a million examples sit neither in Python lists of tokens nor in a list per row (which the garbage
    collector would walk at every full collection)."""

    def __init__(self, examples, plan: list[list[int]]):
        import numpy as np

        self.examples = examples
        self.members = np.fromiter((i for row in plan for i in row), dtype=np.int64, count=sum(map(len, plan)))
        self.starts = np.zeros(len(plan) + 1, dtype=np.int64)
        np.cumsum([len(row) for row in plan], out=self.starts[1:])

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        members = self.members[self.starts[index]:self.starts[index + 1]].tolist()
        part = self.examples[members]  # one read per row from the memory-mapped Arrow files
        return join([{"input_ids": ids, "labels": labels} for ids, labels in zip(part["input_ids"], part["labels"])])


def join(parts: list[dict]) -> dict:
    ids, labels, positions, lengths = [], [], [], []
    for part in parts:
        n = len(part["input_ids"])
        ids += part["input_ids"]
        labels += [-100] + part["labels"][1:]  # the first token is never predicted, packed or not
        positions += list(range(n))
        lengths.append(n)
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "lengths": lengths}


class PackedCollator:
    """Pads packed rows to the longest; the padding is a segment of its own (positions from 0, labels -100),
    so no real token attends to it, and no attention mask is passed."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        from unitune.data import pad_right

        out = pad_right(batch, {"input_ids": self.pad_token_id, "labels": -100, "position_ids": 0})
        for row, n in enumerate(out.pop("_lengths").tolist()):
            out["position_ids"][row, n:] = torch.arange(out["input_ids"].shape[1] - n)  # the padding's own segment
        return out


def isolation_error(model, examples: list[dict]) -> float:
    """Largest |packed - unpacked| logit over `examples` (each run alone vs all in one packed row); in 16-bit
    types divided by the largest |logit|."""
    import torch

    from unitune.loader import autocast_for

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast_for(model):
            row = PackedCollator(0)([join(examples)])
            # no KV cache: transformers finds packed rows from the position ids only without mask and cache
            packed = model(input_ids=row["input_ids"].to(device), position_ids=row["position_ids"].to(device),
                           use_cache=False).logits
            worst, start = 0.0, 0
            for example in examples:
                ids = torch.tensor([example["input_ids"]], device=device)
                alone = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
                n = ids.shape[1]
                worst = max(worst, (packed[0, start:start + n].float() - alone[0].float()).abs().max().item())
                start += n
            if packed.dtype in (torch.bfloat16, torch.float16):
                worst /= max(packed.float().abs().max().item(), 1e-6)
    finally:
        model.train(was_training)
    return worst


def check_isolation(model, examples: list[dict], model_type: str) -> None:
    """Refuse --packing where examples in one row would see each other."""
    sample = [examples[i] for i in range(min(3, len(examples)))]
    if len(sample) < 2:
        return
    error = isolation_error(model, sample)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    tolerance = TOLERANCE.get(dtype, 1e-4)
    if not error <= tolerance:  # also catches NaN
        raise UnituneError(f"--packing: this model's attention path (--model_type {model_type}) lets packed "
                           f"examples see each other (logits differ by {error:.2e} > {tolerance} in {dtype}); "
                           f"train without --packing")
