"""Train an AutoEncoder, VAE or VQ-VAE.

    accelerate launch training/train.py --config training/configs/quickstart.yaml
    python training/train.py --config training/configs/vqvae_cifar10.yaml --train_batch_size 64

Every option (see --help) can be set in the YAML file and overridden on the command line;
model options as --model.KEY VALUE. The work happens in `latentcode.training`.
"""

import logging

from latentcode.errors import command_line
from latentcode.training import parse_args, train

# A misspelt --pretrained_model_name_or_path ends the run with its message, not a traceback.
main = command_line(train)

if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    main(parse_args())
