"""BERT model classes (HF module and parameter names) and checkpoint conversion."""

from bertforge.model.bert import (
    BertForMaskedLM,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertModel,
    pretraining_loss,
)

__all__ = [
    "BertModel",
    "BertForPreTraining",
    "BertForMaskedLM",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "pretraining_loss",
]
