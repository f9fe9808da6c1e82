"""The draft engine: many requests, few ``generate`` calls, one draft per request."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteriaList

from models.batching import StepClock, fitting_batch_size, run_halving
from models.drafts import DraftReport, DraftRequest
from models.guardrails import check_draft, split_sections
from models.loading import LoadedModel, library_versions, load_model
from models.prompts import PROMPT_VERSIONS, Prompt, build_prompt

_EXTRA_STOP_TOKENS = ("<end_of_turn>",)


@dataclass
class _Job:
    index: int
    request: DraftRequest
    prompt: Prompt
    text: str
    tokens: int  # prompt tokens, image tokens included


class ReportDrafter:
    """MedGemma (or any Gemma 3 checkpoint) writing draft reports, batched and greedy."""

    def __init__(self, loaded: LoadedModel, *, max_new_tokens: int, max_batch_size: int) -> None:
        self.loaded = loaded
        self.model_id = loaded.model_id
        self.prompt_versions: dict[str, str] = dict(PROMPT_VERSIONS)
        self.max_new_tokens = max_new_tokens
        self.max_batch_size = max(1, max_batch_size)
        self._oom_cap = self.max_batch_size  # lowered for good after an out-of-memory error
        self._draft_started = time.perf_counter()
        tokenizer = loaded.processor.tokenizer
        stops = [tokenizer.eos_token_id] + [
            tokenizer.convert_tokens_to_ids(t) for t in _EXTRA_STOP_TOKENS
        ]
        self.stop_token_ids = sorted(
            {i for i in stops if i is not None and i != tokenizer.unk_token_id}
        )
        # Explicit greedy settings: MedGemma's own generation_config.json samples.
        self.generation_config = GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.stop_token_ids,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )

    @classmethod
    def load(
        cls,
        model: str,
        *,
        revision: str | None = None,
        device: str = "auto",
        max_new_tokens: int = 512,
        max_batch_size: int = 8,
        dtype: str | None = None,
    ) -> ReportDrafter:
        """Load (once per process) and wrap a checkpoint; see ``models.loading.load_model``."""
        loaded = load_model(model, revision=revision, device=device, dtype=dtype)
        return cls(loaded, max_new_tokens=max_new_tokens, max_batch_size=max_batch_size)

    # -- public ------------------------------------------------------------------

    def draft(self, requests: Sequence[DraftRequest]) -> list[DraftReport]:
        """One draft per request, in the order given."""
        self._draft_started = time.perf_counter()
        jobs = [self._job(i, r) for i, r in enumerate(requests)]
        # Similar lengths share a batch, so little of it is padding.
        ordered = sorted(jobs, key=lambda j: (j.tokens, j.index))
        reports: list[tuple[int, DraftReport]] = []
        groups: list[list[_Job]] = []
        for job in ordered:
            if groups and self._fits(groups[-1] + [job]):
                groups[-1].append(job)
            else:
                groups.append([job])
        for group in groups:
            done = run_halving(group, len(group), self._generate, on_shrink=self._shrink)
            reports.extend(zip((j.index for j in group), done, strict=True))
        reports.sort(key=lambda pair: pair[0])
        return [report for _, report in reports]

    def batch_size_for(self, tokens_per_request: int) -> int:
        """How many requests of this prompt length go into one ``generate`` call now."""
        fitting = fitting_batch_size(
            self.loaded.model.config,
            self.loaded.dtype,
            self.loaded.device,
            tokens_per_request + self.max_new_tokens,
            self.max_batch_size,
        )
        return max(1, min(fitting, self._oom_cap))

    # -- internals ---------------------------------------------------------------

    def _shrink(self, size: int) -> None:
        self._oom_cap = max(1, min(self._oom_cap, size))

    def _fits(self, group: list[_Job]) -> bool:
        return len(group) <= self.batch_size_for(max(j.tokens for j in group))

    def _job(self, index: int, request: DraftRequest) -> _Job:
        prompt = build_prompt(request)
        processor = self.loaded.processor
        text = processor.apply_chat_template(
            prompt.messages, add_generation_prompt=True, tokenize=False
        )
        text_tokens = len(processor.tokenizer(text, add_special_tokens=False).input_ids)
        # Each image placeholder expands to image_seq_length soft tokens (+ boi/eoi framing).
        tokens = text_tokens + len(prompt.images) * (processor.image_seq_length + 4)
        return _Job(index, request, prompt, text, tokens)

    def _generate(self, jobs: Sequence[_Job]) -> list[DraftReport]:
        loaded = self.loaded
        started = time.perf_counter()
        inputs = loaded.processor(
            text=[j.text for j in jobs],
            images=[j.prompt.images for j in jobs],
            padding=True,
            return_tensors="pt",
        )
        inputs = inputs.to(loaded.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
        prepared = time.perf_counter()
        clock = StepClock()
        with torch.inference_mode():
            output = loaded.model.generate(
                **inputs,
                generation_config=self.generation_config,
                stopping_criteria=StoppingCriteriaList([clock]),
            )
        finished = time.perf_counter()
        prompt_width = inputs["input_ids"].shape[1]
        new_tokens = output[:, prompt_width:].cpu()
        input_counts = inputs["attention_mask"].sum(dim=1).tolist()
        timings = {
            # Time the request waited inside draft() for earlier batches.
            "queue_s": round(started - self._draft_started, 4),
            "preprocess_s": round(prepared - started, 4),
            "generate_s": round(finished - prepared, 4),
            "first_token_s": _round(clock.first_token_s),
            "decode_ms_per_step": _round(clock.decode_ms_per_step),
        }
        return [
            self._report(job, new_tokens[row], int(input_counts[row]), len(jobs), timings)
            for row, job in enumerate(jobs)
        ]

    def _report(
        self,
        job: _Job,
        generated: torch.Tensor,
        input_tokens: int,
        batch_size: int,
        timings: dict[str, Any],
    ) -> DraftReport:
        ids = generated.tolist()
        stop_at = next((k for k, t in enumerate(ids) if t in self.stop_token_ids), None)
        kept = ids if stop_at is None else ids[:stop_at]
        hit_limit = stop_at is None and len(ids) >= self.max_new_tokens
        raw = self.loaded.processor.tokenizer.decode(kept, skip_special_tokens=True).strip()
        findings, impression = split_sections(raw)
        flags = check_draft(raw, modality=job.request.context.modality, hit_token_limit=hit_limit)
        return DraftReport(
            request_id=job.request.request_id,
            findings=findings,
            impression=impression,
            raw_text=raw,
            flags=flags,
            provenance=self._provenance(
                job, input_tokens, len(kept), hit_limit, batch_size, timings
            ),
        )

    def _provenance(
        self,
        job: _Job,
        input_tokens: int,
        output_tokens: int,
        hit_limit: bool,
        batch_size: int,
        timings: dict[str, Any],
    ) -> dict[str, Any]:
        loaded = self.loaded
        gen = self.generation_config
        return {
            "model_id": self.model_id,
            "model_revision": loaded.revision,
            "weights_sha256": loaded.weights_sha256,
            "model_class": type(loaded.model).__name__,
            "dtype": str(loaded.dtype).removeprefix("torch."),
            "device": str(loaded.device),
            "prompt_template": job.prompt.template,
            "prompt_version": job.prompt.version,
            "generation": {
                "do_sample": gen.do_sample,
                "num_beams": gen.num_beams,
                "max_new_tokens": gen.max_new_tokens,
                "stop_token_ids": list(self.stop_token_ids),
            },
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "images": len(job.prompt.images),
            "stop_reason": "length" if hit_limit else "eos",
            "batch_size": batch_size,
            "timings": dict(timings),
            "versions": library_versions(),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
