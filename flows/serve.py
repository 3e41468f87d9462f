"""`python -m flows.serve`: register and serve the deployments (runs execute in this process).

prefect server start                       # another terminal; or point PREFECT_API_URL at a server
python -m flows.serve
prefect deployment run 'train-gan/local' --param overrides='["gan.steps=500"]' --watch
"""

from __future__ import annotations

from prefect import serve

from flows.style_transfer import style_transfer_flow
from flows.train_gan import train_gan_flow


def deployments() -> list:
    return [
        train_gan_flow.to_deployment(name="local", description="ganops: train, evaluate, promote"),
        style_transfer_flow.to_deployment(name="local", description="ganops: every content x style pair"),
    ]


if __name__ == "__main__":
    serve(*deployments())
