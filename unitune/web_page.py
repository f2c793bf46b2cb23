"""The Gradio face of web.py: a chat page whose replies stream from the same Engine as the API.

The conversation the model sees is kept as (user, assistant) pairs in a gr.State; the Chatbot only
displays it (in Gradio's messages format), so markdown rendering never leaks back into prompts.

Stop and Clear do not use Gradio's `cancels`: its page keeps applying a cancelled event's in-flight
updates for a moment, which could paint a cleared chat again. Instead they flag the session's running
Job, and the streaming handler, the one writer of the chat while it runs, ends with the final state.
(No `from __future__ import annotations` here: Gradio reads the `gr.Request` hints at run time.)
"""

import time

from unitune.serve.engine import ApiError

UPDATE_EVERY_S = 0.05  # at most ~20 page updates a second: each one re-renders the chat in the browser


def as_messages(pairs: list | None, pending: tuple | None = None) -> list:
    """(user, assistant) pairs -> Gradio Chatbot messages."""
    out = []
    for user, assistant in [*(pairs or []), *([pending] if pending else [])]:
        out.append({"role": "user", "content": user})
        out.append({"role": "assistant", "content": assistant})
    return out


def build_page(server):
    """The gr.Blocks chat page for a unitune.web.Server."""
    import gradio as gr

    kwargs = server.base_kwargs
    greedy = not kwargs.get("do_sample")
    window = server.engine.context_window or 4096
    default_system = server.chat_args.system if server.chat_args.system is not None else server.loaded.template.system
    running: dict = {}  # session -> its Job while a reply streams

    async def answer(message: str, pairs: list, system: str, temperature: float, top_p: float, max_new: float,
                     request: gr.Request):
        """Stream the reply to `message` after `pairs`; yields (chatbot, pairs, textbox) updates."""
        pairs = [tuple(p) for p in (pairs or [])]
        message = (message or "").strip()
        if not message:
            yield as_messages(pairs), pairs, gr.skip()
            return
        try:
            job = server.chat_job(message, pairs, system, int(max_new), temperature=float(temperature),
                                  top_p=float(top_p))
        except ApiError as err:
            raise gr.Error(err.message) from None
        session = request.session_hash
        running[session] = job
        yield as_messages(pairs, (message, "")), gr.skip(), ""
        reply, shown = "", 0.0
        try:
            async for piece in job.pieces():
                reply += piece
                if time.monotonic() - shown >= UPDATE_EVERY_S:
                    shown = time.monotonic()
                    yield as_messages(pairs, (message, reply)), gr.skip(), gr.skip()
        finally:  # also when the page goes away mid-reply: the generation stops with it
            job.cancel.set()
            if running.get(session) is job:
                del running[session]
        if job.cleared:
            yield [], [], gr.skip()
            return
        pairs = [*pairs, (message, reply)]  # after Stop, the reply so far is kept
        yield as_messages(pairs), pairs, gr.skip()

    async def regenerate(pairs: list, system: str, temperature: float, top_p: float, max_new: float,
                         request: gr.Request):
        pairs = [tuple(p) for p in (pairs or [])]
        if not pairs:
            yield [], [], gr.skip()
            return
        async for update in answer(pairs[-1][0], pairs[:-1], system, temperature, top_p, max_new, request):
            yield update

    # async, so they run on the event loop between the streaming handler's steps, never in the middle
    async def stop(request: gr.Request):
        job = running.get(request.session_hash)
        if job is not None:
            job.cancel.set()

    async def clear(request: gr.Request):
        job = running.get(request.session_hash)
        if job is None:
            return [], [], ""
        job.cleared = True  # the streaming handler ends by clearing the chat
        job.cancel.set()
        return gr.skip(), gr.skip(), ""

    with gr.Blocks(title=f"unitune · {server.model_id}") as page:
        gr.Markdown(f"### Chat with `{server.model_id}`  \nThe same model answers the API at `/v1`.")
        pairs = gr.State([])
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Conversation", height=460, elem_id="chatbot", feedback_options=None)
                with gr.Row():
                    box = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, scale=6,
                                     elem_id="message", autofocus=True, lines=1)
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                with gr.Row():
                    stop_button = gr.Button("Stop", elem_id="stop")
                    regen_button = gr.Button("Regenerate", elem_id="regenerate")
                    clear_button = gr.Button("Clear", elem_id="clear")
            with gr.Column(scale=1):
                system = gr.Textbox(label="System prompt", value=default_system, lines=4, elem_id="system")
                temperature = gr.Slider(0, 2, value=0.0 if greedy else kwargs.get("temperature", 1.0), step=0.05,
                                        label="Temperature (0 = greedy)", elem_id="temperature")
                top_p = gr.Slider(0.05, 1, value=kwargs.get("top_p", 1.0), step=0.05, label="Top p", elem_id="top_p")
                max_new = gr.Slider(1, max(1, min(window, 4096)), step=1, label="Max new tokens", elem_id="max_new",
                                    value=min(server.gen_args.max_new_tokens, window))
        settings = [system, temperature, top_p, max_new]
        outputs = [chatbot, pairs, box]
        box.submit(answer, [box, pairs, *settings], outputs)
        send.click(answer, [box, pairs, *settings], outputs)
        regen_button.click(regenerate, [pairs, *settings], outputs)
        stop_button.click(stop, None, None)
        clear_button.click(clear, None, outputs)
        chatbot.clear(clear, None, outputs)  # the chat's own trash icon: it must forget the history too
    page.queue(default_concurrency_limit=None)  # the Engine's queue is the one that bounds work
    return page
