"""Fine-tuning tasks: SQuAD question answering and GLUE sequence classification.

``squad``          examples, sliding-window features, n-best decoding, ``answer_questions``
``squad_metrics``  the official SQuAD v1.1 / v2.0 evaluation
``glue``           TSV processors, features and metrics of every GLUE task

Their tokenizer (WordPiece with character offsets) is ``bertforge.data.tokenization.load_tokenizer``.
"""
