"""Serving: a trained run as a recommender (`Recommender`), several of them over one
durable user state (`ModelService`), and the HTTP app on top (`serve.app.create_app`)."""

from modrec.serve.recommender import Recommender, ServeConfig
from modrec.serve.service import Event, ModelService, Request

__all__ = ["Event", "ModelService", "Recommender", "Request", "ServeConfig"]
