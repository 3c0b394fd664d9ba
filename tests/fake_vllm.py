"""A tiny OpenAI-compatible server that answers the way vLLM 0.32's does, backed by real HF models.

It implements what tunelens's vLLM engine sends (tunelens.engines.vllm): ``GET /v1/models`` and ``/version``,
``POST /v1/completions`` with token-id prompts (``prompt_logprobs``, greedy ``max_tokens``, ``stop`` with
``include_stop_str_in_output``, ``logprobs`` / ``logprob_token_ids``, ``return_token_ids``,
``return_tokens_as_token_ids``) and ``POST /v1/load_lora_adapter`` (with vLLM's rank check), computed by a real
forward pass of the models it holds, so a client that reads the answers wrongly gets wrong numbers.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class FakeVLLM:
    def __init__(self, base_dir, *, served: str = "base", adapter_dir=None, max_lora_rank: int = 16,
                 runtime_lora: bool = False, max_model_len: int = 258):  # as tunelens starts it
        from tunelens.models import resolve_model

        self.served, self.base_dir, self.max_lora_rank, self.runtime_lora = served, base_dir, max_lora_rank, runtime_lora
        self.max_model_len = max_model_len
        h = resolve_model(str(base_dir))
        self.tokenizer = h.tokenizer
        self.models = {served: h.model}
        self.roots = {served: str(base_dir)}
        if adapter_dir is not None:
            self._add_lora("tuned", adapter_dir)
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def _add_lora(self, name, folder):
        from tunelens.models import resolve_model

        self.models[name] = resolve_model(str(folder), base=str(self.base_dir), merge_adapter=True).model
        self.roots[name] = str(folder)

    # -- the API

    def model_list(self) -> dict:
        data = [{"id": k, "object": "model", "root": self.roots[k], "parent": None if k == self.served else self.served,
                 "max_model_len": self.max_model_len if k == self.served else None} for k in self.models]
        return {"object": "list", "data": data}

    def load_lora(self, body) -> tuple[int, object]:
        if not self.runtime_lora:
            return 404, {"detail": "Not Found"}
        cfg = json.loads(open(f"{body['lora_path']}/adapter_config.json").read())
        if cfg["r"] > self.max_lora_rank:
            return 400, {"error": {"message": f"Call to add_lora method failed: LoRA rank {cfg['r']} is greater than "
                                              f"max_lora_rank {self.max_lora_rank}.", "code": 400}}
        self._add_lora(body["lora_name"], body["lora_path"])
        return 200, f"Success: LoRA adapter '{body['lora_name']}' added successfully."

    @torch.inference_mode()
    def complete(self, body) -> tuple[int, dict]:
        self.requests.append(body)
        name = body.get("model")
        if name not in self.models:
            return 404, {"error": {"message": f"The model `{name}` does not exist.", "code": 404}}
        model = self.models[name]
        prompts = body["prompt"]
        prompts = [prompts] if prompts and isinstance(prompts[0], int) else prompts
        max_tokens = body.get("max_tokens", 16)
        choices = []
        for idx, ids in enumerate(prompts):
            if len(ids) + max_tokens > self.max_model_len:
                return 400, {"error": {"message": f"This model's maximum context length is {self.max_model_len} "
                                                  "tokens", "code": 400}}
            ch = {"index": idx, "finish_reason": "length"}
            if body.get("prompt_logprobs") is not None:
                lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
                out = [None]
                for k in range(1, len(ids)):
                    row = lp[k - 1]
                    tok = ids[k]
                    entry = {str(tok): {"logprob": float(row[tok]), "rank": int((row > row[tok]).sum()) + 1}}
                    top = int(row.argmax())
                    entry.setdefault(str(top), {"logprob": float(row[top]), "rank": 1})
                    out.append(entry)
                ch["prompt_logprobs"] = out
            toks, lps, tops = [], [], []
            x = list(ids)
            stop = body.get("stop") or []
            for _ in range(max_tokens):
                row = torch.log_softmax(model(torch.tensor([x])).logits[0, -1].float(), -1)
                t = int(row.argmax())
                toks.append(t)
                lps.append(float(row[t]))
                extra = body.get("logprob_token_ids") or []
                tops.append({f"token_id:{t}": float(row[t]), **{f"token_id:{e}": float(row[e]) for e in extra}})
                x.append(t)
                if t == self.tokenizer.eos_token_id:
                    ch["finish_reason"] = "stop"
                    break
                text = self.tokenizer.decode(toks, skip_special_tokens=True)
                if any(s in text for s in stop):
                    ch["finish_reason"] = "stop"
                    break
            ch["text"] = self.tokenizer.decode(toks, skip_special_tokens=True)
            if body.get("logprobs") is not None:
                ch["logprobs"] = {"tokens": [f"token_id:{t}" for t in toks], "token_logprobs": lps,
                                  "top_logprobs": tops}
            ch["token_ids"] = toks if body.get("return_token_ids") else None
            choices.append(ch)
        return 200, {"object": "text_completion", "model": name, "choices": choices}

    # -- serving

    def __enter__(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, obj):
                raw = (obj if isinstance(obj, str) else json.dumps(obj)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, fake.model_list())
                elif self.path == "/version":
                    self._send(200, {"version": "0.32.0-fake"})
                else:
                    self._send(404, {"detail": "Not Found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    if self.path == "/v1/completions":
                        self._send(*fake.complete(body))
                    elif self.path == "/v1/load_lora_adapter":
                        self._send(*fake.load_lora(body))
                    else:
                        self._send(404, {"detail": "Not Found"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
