"""A stand-in model worker for the controller tests: the worker endpoints, no model.

Run as: python tests/fake_worker.py --port P --model NAME [--delay S] [--first-delay S]
It streams the prompt followed by " one", " two", ... (`--chunks` pieces, `--delay` seconds apart),
after `--first-delay` seconds of silence before it answers at all (as a busy worker waiting for a slot).
"""

import argparse
import asyncio
import json

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--first-delay", type=float, default=0.0)
    args = parser.parse_args()
    app = FastAPI()
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]

    @app.post("/worker_get_status")
    async def status() -> dict:
        return {"model_names": [args.model], "speed": 1, "queue_length": 0}

    @app.post("/worker_generate_stream")
    async def generate(request: Request) -> StreamingResponse:
        params = await request.json()
        await asyncio.sleep(args.first_delay)

        async def stream():
            text = params["prompt"]
            for word in words[: args.chunks]:
                await asyncio.sleep(args.delay)
                text += " " + word
                yield json.dumps({"text": text, "error_code": 0}).encode() + b"\0"

        return StreamingResponse(stream())

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
