"""Pipelines: composable stages around the generator (RAG first)."""

from .base import Pipeline, PipelineState, Stage
from .rag import DEFAULT_TEMPLATE, BuildPrompt, Generate, RAGAnswer, RAGPipeline, Retrieve

__all__ = ["DEFAULT_TEMPLATE", "BuildPrompt", "Generate", "Pipeline", "PipelineState", "RAGAnswer", "RAGPipeline",
           "Retrieve", "Stage"]
