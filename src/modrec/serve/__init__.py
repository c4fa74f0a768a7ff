"""Serving: recommendations from a run directory."""

from modrec.serve.recommender import describe_items, recommend_for_user, top_k

__all__ = ["describe_items", "recommend_for_user", "top_k"]
