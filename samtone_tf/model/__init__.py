"""The model: raw-string encoder towers and the dual encoder in the paper's architectures (`towers`), the WordPiece
tokenizer in the graph (`text`), Hugging Face BERT-family checkpoints read offline (`pretrained`,
`torch_checkpoint`), building one from a training configuration (`builder`) and a tower's fingerprint
(`fingerprint`). Imports only ground modules."""
