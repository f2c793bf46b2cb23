"""Serving under both faces of web.py: engine.py (jobs, the bounded queue, the engine backends), batching.py
(continuous batching over a Hugging Face model) and vllm_engine.py (--infer_backend vllm).

Arrows point down: web.py, web_api.py and web_page.py import this package, never the other way.
"""
