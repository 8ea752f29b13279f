"""Training and comparing attention modules on a backbone: `sase train`, `sase eval`, `sase compare`.

    from sase.train import TrainConfig, run_train, load_model
    result = run_train(TrainConfig(attention="se", epochs=2))
    model, spec = load_model(result.out / "model.safetensors")
"""
from .config import PRESETS, TrainConfig
from .export import ModelSpec, load_model, save_safetensors
from .loop import TrainingDiverged, TrainResult, Trainer, run_train
from .metrics import EvalResult, count_flops, count_parameters, evaluate, inference_throughput

__all__ = ["PRESETS", "EvalResult", "ModelSpec", "TrainConfig", "TrainResult", "Trainer", "TrainingDiverged",
           "count_flops", "count_parameters", "evaluate", "inference_throughput", "load_model", "run_train",
           "save_safetensors"]
