"""Data: readers, ShareGPT normalization, the dataset registry, templates, labels, truncation, split, cache."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from unitune import data as D
from unitune.errors import UnituneError
from unitune.templates import get_template

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO / "../shared"
GLAIVE = SHARED / "data" / "alpaca" / "glaive_toolcall_zh_demo.json"

RECORDS = [
    {"instruction": "Add the numbers.", "input": "3 4", "output": "3 + 4 = 7. Answer: 7"},
    {"instruction": "Name a colour, please", "input": "", "output": "Blue,\nwith a \"quote\" and a comma"},
    {"instruction": "以下是描述任务的指令", "input": "", "output": "答案：七"},
]
EXPECTED = [{"system": None, "history": [], **r} for r in RECORDS]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tests.tiny import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def write(path: Path, records: list[dict], fmt: str) -> Path:
    if fmt == "json":
        path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    elif fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["instruction", "input", "output"])
            writer.writeheader()
            writer.writerows(records)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    return path


# ---------------------------------------------------------------- readers
@pytest.mark.parametrize("name,fmt", [("a.json", "json"), ("a.jsonl", "jsonl"), ("lines.json", "jsonl"),
                                      ("a.parquet", "parquet"), ("a.csv", "csv")])
def test_every_format_reads_the_same_records(tmp_path, name, fmt):
    path = write(tmp_path / name, RECORDS, fmt)
    assert D.load_file(path) == EXPECTED


def test_locations_name_the_line_or_index(tmp_path):
    """Error messages point at the record: JSONL and CSV by line (multi-line CSV fields counted), arrays by index."""
    jsonl = write(tmp_path / "a.jsonl", RECORDS, "jsonl")
    assert [w for w, _ in D.read_records(jsonl)] == ["line 1", "line 2", "line 3"]
    csv_file = write(tmp_path / "a.csv", RECORDS, "csv")
    assert [w for w, _ in D.read_records(csv_file)] == ["line 2", "line 3", "line 5"]
    array = write(tmp_path / "a.json", RECORDS, "json")
    assert [w for w, _ in D.read_records(array)] == ["record 0", "record 1", "record 2"]
    bad = [dict(RECORDS[0]), {"instruction": "x"}]
    with pytest.raises(UnituneError, match=r"b\.jsonl: line 2: missing field 'output'"):
        D.load_file(write(tmp_path / "b.jsonl", bad, "jsonl"))


def test_max_samples_limits_each_file(tmp_path):
    path = write(tmp_path / "a.jsonl", RECORDS, "jsonl")
    assert D.load_file(path, max_samples=2) == EXPECTED[:2]


# ---------------------------------------------------------------- conversations
def test_sharegpt_from_value_and_role_content_normalize_alike():
    sharegpt = {"conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
        {"from": "human", "value": "2+2?"}, {"from": "function_call", "value": '{"name": "add"}'},
        {"from": "observation", "value": "4"}, {"from": "gpt", "value": "It is 4."}]}
    openai = {"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                           {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": '{"name": "add"}'},
                           {"role": "tool", "content": "4"}, {"role": "assistant", "content": "It is 4."}]}
    expected = {"system": "Be brief.", "history": [["Hi", "Hello!"], ["2+2?", '{"name": "add"}']],
                "instruction": "4", "input": "", "output": "It is 4."}
    assert D.normalize(sharegpt, "x") == expected
    # the same messages under the `conversations` key with role/content spellings
    assert D.normalize({"conversations": openai["messages"]}, "x") == expected
    assert D.normalize(openai, "x") == expected


def test_sharegpt_with_tools_puts_them_in_the_system_text():
    record = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
              "tools": '[{"name": "f"}]'}
    assert D.normalize(record, "x")["system"] == 'Tools: [{"name": "f"}]'
    record["tools"] = "[]"  # glaive's way of saying "no tools": no system text
    assert D.normalize(record, "x")["system"] is None


def test_bad_conversation_names_the_message():
    record = {"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]}
    with pytest.raises(UnituneError, match=r"f\.json: record 3: conversations\[1\] has unknown role 'robot'"):
        D.normalize(record, "f.json: record 3")
    with pytest.raises(UnituneError, match="must alternate"):
        D.normalize({"conversations": [{"from": "human", "value": "q"}]}, "x")


@pytest.mark.skipif(not GLAIVE.is_file(), reason=f"shared data absent: {GLAIVE} (../shared is not checked out)")
def test_glaive_toolcall_file_normalizes_with_history():
    records = D.load_file(GLAIVE)
    assert len(records) == 300
    assert all(r["instruction"] and r["output"] and r["input"] == "" for r in records)
    multi = [r for r in records if r["history"]]
    assert len(multi) > 100  # most glaive conversations have several turns
    assert all(len(pair) == 2 and all(isinstance(t, str) and t for t in pair) for r in multi for pair in r["history"])
    # the first conversation is human, function_call, observation, gpt: the call is history, the
    # observation becomes the last query
    first = records[0]
    assert first["history"][0][1].startswith('{"name": "generate_invoice"')
    assert first["instruction"].startswith('{"invoice_id": "INV12345"')
    assert first["system"].startswith("Tools: [")
    assert D.resolve("glaive_toolcall_zh_demo", data_dir=GLAIVE.parent) == GLAIVE


# ---------------------------------------------------------------- registry and --data
def test_registry_names_and_paths_mix_in_data(tmp_path, monkeypatch):
    """--data takes several names and paths; shipped names resolve through dataset_info.json relative to data/
    (here a UNITUNE_HOME laid out like a checkout)."""
    from unitune.paths import asset_root
    from unitune.train import parse

    home = tmp_path / "home"
    home.mkdir()
    for kind in ("peft", "templates", "models"):
        (home / kind).symlink_to(asset_root() / kind)
    data_dir = home / "data"
    (data_dir / "sub").mkdir(parents=True)
    write(data_dir / "sub" / "named.jsonl", RECORDS[:2], "jsonl")
    (data_dir / "dataset_info.json").write_text(json.dumps({"named": {"file": "sub/named.jsonl"}}))
    monkeypatch.setenv("UNITUNE_HOME", str(home))
    csv_file = write(tmp_path / "extra.csv", RECORDS[2:], "csv")
    parquet = write(tmp_path / "extra.parquet", RECORDS[:1], "parquet")

    _, data_args, _, _ = parse(["--data", "named", str(csv_file), str(parquet)])
    assert data_args.data == ["named", str(csv_file), str(parquet)]
    assert D.load_datasets(data_args.data) == EXPECTED[:2] + EXPECTED[2:] + EXPECTED[:1]
    with pytest.raises(UnituneError, match=r"unknown dataset 'nope'.*known: named"):
        D.resolve("nope")


ALPACA_COT_NAMES = ["alpaca", "belle", "cot", "alpaca-cot", "alpaca-belle", "alpaca-belle-cot", "belle1.5m",
                    "finance", "multiturn_chat", "CoT_Chinese_data", "gpt4all"]


def test_real_registry_entries_are_well_formed():
    """Every entry is shipped (and the file is there), on a hub, at a URL, or combines other entries; nothing
    points outside the repository; Alpaca-CoT's collection names are all registered."""
    from unitune.paths import asset_dir

    entries = D.registry()
    assert set(ALPACA_COT_NAMES) <= set(entries)
    for name, entry in entries.items():
        sources = [k for k in ("hub", "url", "combine") if k in entry] or ["shipped"]
        assert len(sources) == 1, name
        if sources == ["combine"]:
            assert entry["combine"] and all(part in entries for part in entry["combine"]), name
            continue
        assert isinstance(entry.get("file"), str) and ".." not in Path(entry["file"]).parts, name
        assert Path(entry["file"]).suffix in D.READERS, name
        if sources == ["shipped"]:
            assert (asset_dir("data") / entry["file"]).is_file(), name
        if sources == ["url"]:
            assert entry["url"].startswith("https://") and entry["url"].endswith(Path(entry["file"]).name), name


def test_alpaca_cot_name_offline_names_the_file_then_trains_once_it_is_placed(tmp_path, capsys):
    """Offline, `--data alpaca` is a one-line error naming the file, where it comes from and where to put it,
    before any model loads; the same name with the file placed there trains."""
    from unitune import train as T

    out = tmp_path / "out"
    argv = ["--data", "alpaca", "--data_dir", str(tmp_path / "data"), "--max_steps", "2", "--eval_samples", "2",
            "--eval_base", "false", "--output_dir", str(out)]
    with pytest.raises(UnituneError) as err:
        T.run(argv)
    message = str(err.value)
    expected_file = tmp_path / "data" / "alpaca" / "alpaca_data_cleaned.json"
    assert "\n" not in message and str(expected_file) in message
    assert "QingyiSi/Alpaca-CoT" in message and "--data_dir" in message
    assert not out.exists()

    expected_file.parent.mkdir(parents=True)
    write(expected_file, RECORDS * 4, "json")
    result = T.run(argv)
    assert (out / "adapter_config.json").is_file()
    assert result["final_loss"] is not None and result["final_loss"] == result["final_loss"]  # finite, not NaN


def test_combined_names_read_their_parts_in_order(tmp_path):
    """Alpaca-CoT's concatenated files are entries that combine their parts: alpaca-cot = alpaca, then cot."""
    data_dir = tmp_path / "d"
    (data_dir / "alpaca").mkdir(parents=True)
    write(data_dir / "alpaca" / "alpaca_data_cleaned.json", RECORDS[:1], "json")
    write(data_dir / "CoT_data.json", RECORDS[1:], "json")  # Alpaca-CoT's flat ./data/ layout also works
    assert D.load_datasets(["alpaca-cot"], data_dir=data_dir) == EXPECTED


@pytest.mark.skipif(not (SHARED / "data" / "alpaca").is_dir(), reason="../shared/data/alpaca absent")
def test_real_registry_resolves_shared_names_mixed_with_a_path(tmp_path):
    path = write(tmp_path / "mine.json", RECORDS, "json")
    shared = SHARED / "data" / "alpaca"
    records = D.load_datasets(["alpaca_en_demo", str(path), "alpaca_zh_demo"], max_samples=5, data_dir=shared)
    assert len(records) == 5 + 3 + 5
    assert records[5:8] == EXPECTED


# ---------------------------------------------------------------- templates and labels
def test_alpaca_and_alpaca_zh_templates_render():
    alpaca = get_template("alpaca")
    text = alpaca.prompt_for("Add the numbers.", "3 4")
    assert text == ("Below is an instruction that describes a task. Write a response that appropriately completes "
                    "the request.\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n3 4\n\n### Response:\n")
    assert alpaca.prompt_for("Hi").endswith("### Instruction:\nHi\n\n### Response:\n")
    zh = get_template("alpaca_zh")
    text = zh.prompt_for("加法", history=[["一加一", "二"]])
    assert text.startswith("以下是描述任务的指令。")
    assert "### 指令:\n一加一\n\n### 回答:\n二\n\n### 指令:\n加法\n\n### 回答:\n" in text


def _split_prompt_response(tokenizer, template, record):
    """The inference prompt's ids (as the front-ends tokenize it) and the trained rest, eos included."""
    prompt, response = template.segments(record["instruction"], record["input"], record["output"])[0]
    p = tokenizer(prompt)["input_ids"]
    r = tokenizer(prompt + response)["input_ids"][len(p):] + [tokenizer.eos_token_id]
    return p, r


def test_loss_only_on_responses_by_default(tokenizer):
    template = get_template("alpaca")
    record = EXPECTED[0]
    p, r = _split_prompt_response(tokenizer, template, record)
    out = D.encode(tokenizer, template, record, cutoff_len=4096, train_on_inputs=False)
    assert out["input_ids"] == p + r and p == tokenizer(template.prompt_for(record["instruction"], record["input"]))[
        "input_ids"]
    assert out["labels"] == [-100] * len(p) + r


def test_multi_turn_labels_every_response(tokenizer):
    template = get_template("alpaca")
    record = D.normalize({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                                            {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Ciao"}]}, "x")
    out = D.encode(tokenizer, template, record, 4096, False)
    kept = [t for t, label in zip(out["input_ids"], out["labels"]) if label != -100]
    eos = tokenizer.eos_token_id
    # alpaca has no end-of-turn text of its own: eos after the last response only, the history stays plain text
    assert kept == (tokenizer.encode("Hello", add_special_tokens=False)
                    + tokenizer.encode("Ciao", add_special_tokens=False) + [eos])


def test_train_on_inputs_includes_prompt_tokens(tokenizer):
    template = get_template("alpaca")
    out = D.encode(tokenizer, template, EXPECTED[0], 4096, train_on_inputs=True)
    assert out["labels"] == out["input_ids"]


def test_cutoff_truncates_and_drops_examples_without_response(tokenizer, tmp_path, caplog):
    template = get_template("alpaca")
    p, r = _split_prompt_response(tokenizer, template, EXPECTED[0])
    cut = len(p) + 2
    out = D.encode(tokenizer, template, EXPECTED[0], cut, False)
    assert out["input_ids"] == (p + r)[:cut] and sum(x != -100 for x in out["labels"]) == 2
    long_prompt = dict(RECORDS[1], instruction="word " * 200)
    path = write(tmp_path / "cut.jsonl", [RECORDS[0], long_prompt, RECORDS[2]], "jsonl")
    with caplog.at_level(logging.INFO, logger="unitune.data"):
        result = D.prepare([path], tokenizer, template, cut, False, tmp_path / "cache")
    assert result.dropped == 1 and len(result.examples) == 2 and result.records == 3
    assert all(len(e["input_ids"]) <= cut for e in result.examples)
    assert any("dropped 1 of 3 examples" in rec.getMessage() and "--cutoff_len" in rec.getMessage()
               for rec in caplog.records)
    with pytest.raises(UnituneError, match="no trainable example left"):
        D.prepare([write(tmp_path / "long.jsonl", [long_prompt], "jsonl")], tokenizer, template, cut, False,
                  tmp_path / "cache")
    entries = [p.name for p in (tmp_path / "cache").iterdir()]
    assert not [e for e in entries if ".tmp" in e]  # nothing half-written
    assert [e for e in entries if not e.startswith("records-")] == [result.fingerprint]  # no entry for the error


# ---------------------------------------------------------------- validation split
def test_val_set_size_count_and_fraction_reproducible():
    examples = [{"id": i} for i in range(50)]
    train, val = D.split(examples, 10, seed=1)
    assert len(val) == 10 and len(train) == 40
    assert sorted(e["id"] for e in train + val) == list(range(50))
    assert D.split(examples, 10, seed=1) == (train, val)  # same seed, same split
    assert D.split(examples, 10, seed=2)[1] != val
    train_f, val_f = D.split(examples, 0.2, seed=1)
    assert len(val_f) == 10 and val_f == val  # a fraction of 50 is the same count, so the same split
    assert D.split(examples, 0, seed=1) == (examples, [])
    with pytest.raises(UnituneError, match="--val_set_size 50"):
        D.split(examples, 50, seed=1)


# ---------------------------------------------------------------- the Arrow pipeline and its cache
MIXED = [*RECORDS, {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                                      {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Ciao"}]},
         {"instruction": "word " * 300, "output": "dropped: no response token left"},
         {"instruction": "Q", "input": "x", "output": "A", "history": [["q0", "a0"]], "system": "Be brief."}]


def corpus(n: int) -> list[dict]:
    """n records of every shape, deterministic."""
    return [dict(MIXED[i % len(MIXED)]) if "conversations" in MIXED[i % len(MIXED)]
            else {**MIXED[i % len(MIXED)], "output": f"{MIXED[i % len(MIXED)]['output']} #{i}"} for i in range(n)]


def test_batch_token_ids_are_the_tokenizers_own_encode(tokenizer):
    """The encoding takes a batch's ids from the Rust backend's offset-free call: they are exactly what
    tokenizer.encode gives text by text (bos, special tokens written in the text, unicode, empty text)."""
    from unitune.data.encoding import _token_ids

    texts = [f"{r['instruction']}\n{r['output']}" for r in RECORDS] + [
        "", f"{tokenizer.eos_token} inside {tokenizer.eos_token}", "  two  spaces\t\ttabs\n\n", "émoji 🙂 中文"]
    assert _token_ids(tokenizer, texts) == [tokenizer.encode(t, add_special_tokens=True) for t in texts]


@pytest.mark.parametrize("num_proc", [None, 1, 2])
def test_pipeline_gives_exactly_the_encoding_of_each_record(tokenizer, tmp_path, num_proc):
    """The same records through read -> normalize -> encode -> Arrow give exactly the ids and labels that
    encode() gives record by record, in order, and drop exactly the records it drops: in this process with the
    tokenizer on its own thread (the default, None, and 1) and in `num_proc` worker processes."""
    records = corpus(2500)  # several map batches, so two processes really split the work
    paths = [write(tmp_path / "a.jsonl", records[:1500], "jsonl"), write(tmp_path / "b.json", records[1500:], "json")]
    template = get_template("alpaca")
    result = D.prepare(paths, tokenizer, template, 64, False, tmp_path / "cache", num_proc=num_proc)
    expected = [e for r in records if (e := D.encode(tokenizer, template, D.normalize(r, "x"), 64, False))]
    assert result.records == 2500 and result.dropped == 2500 - len(expected) > 0
    assert len(result.examples) == len(expected)
    got = result.examples[:]
    assert got["input_ids"] == [e["input_ids"] for e in expected]
    assert got["labels"] == [e["labels"] for e in expected]
    assert got["length"] == [len(e["input_ids"]) for e in expected]


def test_second_identical_run_is_a_cache_hit_that_reads_no_record(tokenizer, tmp_path, monkeypatch, caplog):
    from unitune.data import dataset

    path = write(tmp_path / "a.jsonl", corpus(60), "jsonl")
    template = get_template("alpaca")
    first = D.prepare([path], tokenizer, template, 64, False, tmp_path / "cache")
    assert not first.from_cache

    def no_reading(*args, **kwargs):
        raise AssertionError("a cache hit must not read the records")

    monkeypatch.setattr(dataset, "iter_raw", no_reading)
    with caplog.at_level(logging.INFO, logger="unitune.data"):
        second = D.prepare([path], tokenizer, template, 64, False, tmp_path / "cache")
    assert second.from_cache and second.fingerprint == first.fingerprint
    assert any("cache hit" in rec.getMessage() and "reading and tokenization skipped" in rec.getMessage()
               for rec in caplog.records)
    assert second.examples[:] == first.examples[:] and second.dropped == first.dropped
    # another --cutoff_len tokenizes again, from the cached records: still nothing read
    third = D.prepare([path], tokenizer, template, 65, False, tmp_path / "cache")
    assert not third.from_cache and third.fingerprint != first.fingerprint and third.records == 60
    import os

    os.utime(path, ns=(1, 1))  # a changed file is read again
    with pytest.raises(AssertionError, match="must not read"):
        D.prepare([path], tokenizer, template, 64, False, tmp_path / "cache")


def test_cache_key_follows_files_tokenizer_template_and_settings(tokenizer, tmp_path):
    import os

    path = write(tmp_path / "a.jsonl", RECORDS, "jsonl")
    template = get_template("alpaca")
    key = D.dataset.fingerprint
    base = key([path], tokenizer, template, 64, False, None)
    assert key([path], tokenizer, template, 64, False, None) == base
    changed = {
        "cutoff": key([path], tokenizer, template, 65, False, None),
        "template": key([path], tokenizer, get_template("alpaca_zh"), 64, False, None),
        "train_on_inputs": key([path], tokenizer, template, 64, True, None),
        "max_samples": key([path], tokenizer, template, 64, False, 2),
        "files": key([path, path], tokenizer, template, 64, False, None),
    }
    os.utime(path, ns=(1, 1))  # the same path, modified: a new key, though nothing was read to see it
    changed["mtime"] = key([path], tokenizer, template, 64, False, None)
    write(path, RECORDS + RECORDS[:1], "jsonl")
    changed["size"] = key([path], tokenizer, template, 64, False, None)
    for what, value in changed.items():
        assert value != base, what
    assert len(set(changed.values())) == len(changed)


@pytest.mark.parametrize("num_proc", [None, 2])
def test_bad_record_in_a_worker_process_is_the_one_line_error(tokenizer, tmp_path, num_proc):
    """The second worker (or this process, after two full batches) meets the bad record; the error is ours,
    naming file, line and field, and nothing is left in the cache."""
    records = corpus(30_000)
    records[24_000] = {"instruction": "no output here"}
    path = write(tmp_path / "bad.jsonl", records, "jsonl")
    with pytest.raises(UnituneError) as err:
        D.prepare([path], tokenizer, get_template("alpaca"), 64, False, tmp_path / "cache", num_proc=num_proc)
    assert type(err.value) is UnituneError
    assert str(err.value) == f"{path}: line 24001: missing field 'output'"
    assert not (tmp_path / "cache").exists()  # the folder this run made is gone with the half-written entry


def test_a_run_whose_tokens_are_cached_never_opens_the_records(tokenizer, tmp_path, monkeypatch):
    """The training flow checks the records before the tokenizer loads (load_records with load=False): that
    writes them where absent, and opens them only when examples must be made from them."""
    from unitune.data import dataset

    path = write(tmp_path / "a.jsonl", corpus(60), "jsonl")
    template = get_template("alpaca")
    records, meta, hit = D.load_records([path], tmp_path / "cache", load=False)
    assert records is None and not hit and meta["records"] == 60
    opened = []
    real = dataset.load_entry
    monkeypatch.setattr(dataset, "load_entry", lambda entry: (opened.append(entry.name), real(entry))[1])
    records, meta, hit = D.load_records([path], tmp_path / "cache", load=False)
    assert records is None and hit and opened == []
    first = D.prepare([path], tokenizer, template, 64, False, tmp_path / "cache")
    assert not first.from_cache and opened[0].startswith("records-") and len(opened) == 2  # records, then tokens
    D.load_records([path], tmp_path / "cache", load=False)
    second = D.prepare([path], tokenizer, template, 64, False, tmp_path / "cache")
    assert second.from_cache and len(opened) == 3 and not opened[2].startswith("records-")
    assert second.examples[:] == first.examples[:]
