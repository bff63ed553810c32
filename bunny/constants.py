"""Constants shared by the model, data and serving code. The values are part of Bunny's checkpoint and data formats."""

IGNORE_INDEX = -100  # label value excluded from the loss
IMAGE_TOKEN_INDEX = -200  # placeholder id put into `input_ids` where an image goes
DEFAULT_IMAGE_TOKEN = "<image>"  # textual placeholder in prompts and training data

CONTROLLER_HEART_BEAT_EXPIRATION = 30  # seconds
WORKER_HEART_BEAT_INTERVAL = 15  # seconds
LOGDIR = "gradio-logs"
