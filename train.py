"""Train one model, or a grid with -m:  python train.py -m model=b0,b3 split=stratified,center"""

import sys

import hydra
from omegaconf import DictConfig

from btxrd.config import CONFIG_DIR
from btxrd.entry import hydra_task, run_hydra_main


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    from btxrd.jobs.train import train_job  # heavy (torch, timm, mlflow): not needed for --cfg or --help

    return hydra_task(train_job, cfg)


if __name__ == "__main__":
    sys.exit(run_hydra_main(main))
