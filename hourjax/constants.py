"""Constants shared by the data side and the model side (the official `hourllava/util/constants.py`)."""

IGNORE_INDEX = -100          # label of a token the loss skips
IMAGE_TOKEN_INDEX = -200     # the `<image>` placeholder in input ids: the visual tokens go here
IMAGE = "<image>"            # the placeholder as text in a conversation
