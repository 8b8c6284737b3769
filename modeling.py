"""NVIDIA-compatible names for the model classes (``from modeling import BertForPreTraining``)."""

from bertforge.config import BertConfig
from bertforge.model.bert import (
    BertForMaskedLM,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertModel,
    pretraining_loss,
)

__all__ = [
    "BertConfig",
    "BertModel",
    "BertForPreTraining",
    "BertForMaskedLM",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "pretraining_loss",
]
