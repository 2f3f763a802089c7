"""Pipelines: composable stages around the generator (RAG, long-document summaries, image captions)."""

from .base import Pipeline, PipelineState, Stage, user_prompt
from .caption import Caption, CaptionPipeline, write_captions
from .rag import DEFAULT_TEMPLATE, BuildPrompt, Generate, RAGAnswer, RAGPipeline, Retrieve
from .reading import html_to_text, read_source, split_text
from .summarize import SummarizePipeline, Summary, SummaryStage

__all__ = ["DEFAULT_TEMPLATE", "BuildPrompt", "Caption", "CaptionPipeline", "Generate", "Pipeline", "PipelineState",
           "RAGAnswer", "RAGPipeline", "Retrieve", "Stage", "SummarizePipeline", "Summary", "SummaryStage",
           "html_to_text", "read_source", "split_text", "user_prompt", "write_captions"]
