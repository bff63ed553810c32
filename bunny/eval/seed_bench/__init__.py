"""SEED-Bench-1: accuracy and upload file from merged answers; middle frames of the video questions."""
