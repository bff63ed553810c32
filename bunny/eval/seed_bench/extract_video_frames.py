"""Save the middle frame of every SEED-Bench-1 video question as the picture the generator is shown.

Run as (needs PyAV: `pip install av`):
    python -m bunny.eval.seed_bench.extract_video_frames [--data-dir eval/seed-bench] [--num-workers 8]

Reads `<data-dir>/SEED-Bench.json` and, for each question with `data_type` "video", one video under
`<data-dir>/SEED-Bench-video/`:
  * dimension 10: `20bn-something-something-v2/<data_id>`, the middle frame of the clip;
  * dimension 11: `EPIC-KITCHENS/<basename of data_id>`, the middle frame of `segment` (seconds,
    turned into frame numbers with the video's average frame rate and clamped to the video);
  * dimension 12: `BreakfastII_15fps_qvga_sync/<data_id>`, the middle frame of `segment` (frame
    numbers, the end clamped to the video);
and writes it to `<data-dir>/SEED-Bench-video-image/<question_type_id>_<question_id>.png`.

"Middle" is the original's: of n frames, frame int((n - 1) / 2), where n is the number of frames
minus one for dimension 10 and end - start for a segment (start added back). The original read
dimensions 10 and 11 with decord; here PyAV reads all three, taking the frame count from the
container (decoding the video when the container does not say) and the frame rate from the stream.

Differences from the original, on purpose: `--data-dir` and `--num-workers` flags; a question that
fails (missing video, empty segment) is reported on stderr and makes the command exit with status
1 after the other frames are written, where the original printed the exception and went on.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Sequence

from tqdm.auto import tqdm

from bunny.eval.common import read_json
from bunny.util.utils import atomic_write

VIDEO_DIRS = {10: "20bn-something-something-v2", 11: "EPIC-KITCHENS", 12: "BreakfastII_15fps_qvga_sync"}
REPORTED_FAILURES = 10  # how many failures are listed one by one


def middle_offset(num_frames: int) -> int | None:
    """The original's one-segment sampling of `num_frames` frames: int((n - 1) / 2), None when
    there is no frame."""
    if num_frames < 1:
        return None
    return int(float(num_frames - 1) / 2)


def frame_index(question: dict[str, Any], num_frames: int, fps: float) -> int:
    """The index of the frame to save for a video question whose video has `num_frames` frames at
    `fps` frames per second."""
    dimension = question["question_type_id"]
    if dimension == 10:
        start, offset = 0, middle_offset(num_frames - 1)
    elif dimension == 11:
        seconds_start, seconds_end = question["segment"][:2]
        start = int(min(max(seconds_start * fps, 0), num_frames - 1))
        end = int(min(max(seconds_end * fps, 0), num_frames - 1))
        offset = middle_offset(end - start)
    elif dimension == 12:
        start, end = question["segment"][:2]
        offset = middle_offset(min(end, num_frames) - start)
    else:
        raise ValueError(f"no video reader for question type {dimension!r} (SEED-Bench-1 videos are types 10-12)")
    if offset is None:
        raise ValueError(f"no frame to take: the video has {num_frames} frame(s), segment {question.get('segment')}")
    return start + offset


def video_path(video_root: str, question: dict[str, Any]) -> str:
    dimension = question["question_type_id"]
    if dimension not in VIDEO_DIRS:
        raise ValueError(f"no video folder for question type {dimension!r} (SEED-Bench-1 videos are types 10-12)")
    name = question["data_id"].split("/")[-1] if dimension == 11 else question["data_id"]
    return os.path.join(video_root, VIDEO_DIRS[dimension], name)


def import_av() -> Any:
    try:
        import av
    except ImportError:
        raise ImportError("extracting SEED-Bench video frames needs PyAV: pip install av") from None
    return av


def frame_count_and_rate(path: str, decode: bool) -> tuple[int, float]:
    """(number of frames, average frames per second) of a video's first video stream; the count
    from the container unless `decode` or the container does not say, else by decoding."""
    av = import_av()
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if stream.frames > 0 and not decode:
            return stream.frames, fps
        return sum(1 for _ in container.decode(video=0)), fps


def read_frame(path: str, index: int) -> Any:
    """Frame `index` (0-based, decoding order) of a video, as an RGB PIL image."""
    av = import_av()
    with av.open(path) as container:
        for number, frame in enumerate(container.decode(video=0)):
            if number == index:
                return frame.to_image()
    raise ValueError(f"{path} has no frame {index}")


def extract_frame(question: dict[str, Any], video_root: str, image_dir: str) -> str:
    """Write one question's frame; return the picture's path."""
    path = video_path(video_root, question)
    if not os.path.isfile(path):
        raise ValueError(f"no video {path}")
    num_frames, fps = frame_count_and_rate(path, decode=question["question_type_id"] == 12)
    image = read_frame(path, frame_index(question, num_frames, fps))
    target = os.path.join(image_dir, f"{question['question_type_id']}_{question['question_id']}.png")
    with atomic_write(target, "wb") as f:
        image.save(f, format="PNG")
    return target


def video_questions(annotation_file: str) -> list[dict[str, Any]]:
    data = read_json(annotation_file)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise ValueError(f"{annotation_file} is not a SEED-Bench annotation (needs a 'questions' list)")
    return [question for question in data["questions"] if question.get("data_type") == "video"]


def extract_all(data_dir: str, num_workers: int) -> dict[str, Any]:
    import_av()  # fail before starting the threads
    questions = video_questions(os.path.join(data_dir, "SEED-Bench.json"))
    video_root = os.path.join(data_dir, "SEED-Bench-video")
    image_dir = os.path.join(data_dir, "SEED-Bench-video-image")
    os.makedirs(image_dir, exist_ok=True)
    written, failures = [], []
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        futures = {pool.submit(extract_frame, question, video_root, image_dir): question for question in questions}
        for future in tqdm(as_completed(futures), total=len(futures), desc="video frames"):
            question = futures[future]
            try:
                written.append(future.result())
            except Exception as err:  # a broken video must not stop the others; each is reported below
                question_id, type_id = question.get("question_id"), question.get("question_type_id")
                failures.append(f"question {question_id!r} (type {type_id!r}): {err}")
    for failure in failures[:REPORTED_FAILURES]:
        print(f"error: {failure}", file=sys.stderr)
    if failures:
        raise ValueError(
            f"{len(failures)} of {len(questions)} video frame(s) not extracted ({len(written)} written to {image_dir})"
        )
    return {"written": len(written), "image_dir": image_dir}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bunny.eval.seed_bench.extract_video_frames", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--data-dir", type=str, default="eval/seed-bench",
        help="folder with SEED-Bench.json and SEED-Bench-video/; frames go to its SEED-Bench-video-image/",
    )
    parser.add_argument("--num-workers", type=int, default=8, help="videos read at the same time (default: 8)")
    args = parser.parse_args(argv)
    try:
        return extract_all(args.data_dir, args.num_workers)
    except (OSError, ValueError, ImportError) as err:
        parser.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
