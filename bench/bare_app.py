"""B7 of docs/performance.md: the HTTP framework alone. A FastAPI app with one route that
answers the fixed bytes of a product, served like `eventkeep serve` serves the API (uvicorn,
the same workers, no access log), so R1 can be judged against what the framework can do.

Run as `python -m eventkeep.bench.bare_app --port P --workers 2` (bench/read_cli.py does).
"""

from __future__ import annotations

import argparse
import uuid

import orjson
import uvicorn
from fastapi import FastAPI, Response

# A product as `GET /v1/products/{id}` answers it: same fields, same size.
PRODUCT = orjson.dumps(
    {
        "id": str(uuid.UUID(int=7)),
        "version": 3,
        "sku": "SKU-000007-s",
        "name": "wireless ergonomic keyboard 7",
        "description": "A wireless ergonomic keyboard, number 7 of the bench shop's range.",
        "category": "peripherals",
        "currency": "EUR",
        "stock": 999_999_993,
        "status": "active",
        "created_at": "2026-11-24T12:00:00.000000+00:00",
        "price": "129.99",
    }
)

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/v1/products/{product_id}")
@app.get("/v1/users/{product_id}")
async def fixed_bytes(product_id: str) -> Response:
    return Response(PRODUCT, media_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    options = parser.parse_args()
    uvicorn.run(
        "eventkeep.bench.bare_app:app",
        host=options.host,
        port=options.port,
        workers=options.workers,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
