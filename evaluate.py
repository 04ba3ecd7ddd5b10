"""Re-score a checkpoint:  python evaluate.py run_id=<mlflow run id>  |  checkpoint=PATH"""

import sys

import hydra
from omegaconf import DictConfig

from btxrd.config import CONFIG_DIR
from btxrd.entry import hydra_task, run_hydra_main


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from btxrd.jobs.evaluate import evaluate_job  # heavy (torch, timm, mlflow): not needed for --cfg or --help

    hydra_task(evaluate_job, cfg)


if __name__ == "__main__":
    sys.exit(run_hydra_main(main))
