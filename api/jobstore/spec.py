"""The job spec: what `POST /jobs` accepts in its `spec` part (shared by the API and the worker)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nern.config import CompressConfig, FitConfig


class JobSpec(FitConfig):
    """What `POST /jobs` accepts in its `spec` part: every `nern fit` setting, plus job fields.

    `data` / `eval_data` name 'cifar10' (the shipped training subset), 'cifar10-test' (the test
    set), 'noise' (`data` only), the name of an uploaded .npz part of the same request, or a
    file name in the server's dataset folder (NERN_DATA_DIR). Paths on the server are refused.
    `compress` ({"prune": 0.5, "quantize": "int8", "finetune_steps": 0}) makes the served
    predictor.nern a compressed copy; its accuracy is what the job reports.
    """

    name: str | None = Field(None, max_length=200, description="free label shown in lists")
    time_limit_s: float | None = Field(
        None, gt=0, le=30 * 86400,
        description="fail the job when it has run this long since its first start (all attempts); null = no limit",
    )
    compress: CompressConfig | None = Field(
        None,
        description="compress the predictor after the fit (prune, quantize, finetune_steps); "
        "null = serve the fitted predictor as is",
    )

    def fit_config(self, **overrides: Any) -> FitConfig:
        data = self.model_dump(exclude={"name", "compress", "time_limit_s"})
        data.update(overrides)
        return FitConfig.model_validate(data)
