"""Train an AutoEncoder, VAE or VQ-VAE.

    accelerate launch training/train.py --config training/configs/quickstart.yaml
    python training/train.py --config training/configs/vqvae_cifar10.yaml --train_batch_size 64

Every option (see --help) can be set in the YAML file and overridden on the command line;
model options as --model.KEY VALUE. The work happens in `latentcode.training`.
"""

import logging

from latentcode.errors import command_line
from latentcode.training.config import parse_args  # no torch: --help and bad options answer at once


@command_line  # a misspelt --pretrained_model_name_or_path ends the run with its message, not a traceback
def main(config) -> None:
    from latentcode.training.autoencoder_task import train

    train(config)


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    main(parse_args())
