"""In-graph WordPiece tokenizer (tensorflow-text): raw strings in, token ids out.

Reproduces the Hugging Face `BertTokenizer` of uncased BERT checkpoints: text
cleaning, lower-casing and accent stripping, splitting on whitespace, punctuation
and CJK characters, WordPiece, then [CLS] ... [SEP] packing and padding. It runs
inside the TensorFlow graph, so what is trained is exactly what is exported; the
vocabulary file travels with a SavedModel as an asset.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import keras
import tensorflow as tf
import tensorflow_text as tf_text

# Hugging Face BasicTokenizer: ASCII symbols count as punctuation as well as Unicode P*.
_PUNCTUATION = r"[!-/:-@\[-`{-~]|\p{P}"
_CJK = (
    r"[\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}"
    r"\x{2B740}-\x{2B81F}\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}]"
)
_KEEP_DELIMITERS = f"{_PUNCTUATION}|{_CJK}"
_DELIMITERS = rf"\s+|{_KEEP_DELIMITERS}"
# Control and format characters (Unicode C*) other than tab/newline/return are dropped,
# as are NUL and U+FFFD; whitespace becomes a plain space.
_DROPPED = r"[^\PC\t\n\r]|\x{FFFD}"
# RE2's \s is ASCII only; Hugging Face also treats Unicode space separators (Zs) as spaces.
_WHITESPACE = r"[\t\n\r\p{Zs}]"

_OWNED_DIRS: list[str] = []


def _remove_owned_dirs():
    for path in _OWNED_DIRS:
        shutil.rmtree(path, ignore_errors=True)


atexit.register(_remove_owned_dirs)


def read_vocabulary(path):
    """The tokens of a WordPiece vocabulary file, one per line, in id order."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


@keras.saving.register_keras_serializable(package="samtone_tf")
class WordPieceTokenizer(keras.layers.Layer):
    """tf.string [B] -> {"token_ids": int32 [B, L], "padding_mask": bool [B, L]}.

    Args:
      vocabulary: path of a WordPiece vocabulary file (one token per line), or a
        list of tokens.
      max_length: L at most, [CLS] and [SEP] included; longer texts are truncated.
      lowercase: lower-case and strip accents (uncased checkpoints).
      pad_to_max_length: pad every batch to `max_length` (static shapes, for XLA
        and TPUs); by default batches are padded to their longest text.
      max_chars_per_word: longer words become [UNK] (counted in UTF-8 bytes).
    """

    def __init__(
        self,
        vocabulary=None,
        max_length=256,
        lowercase=True,
        pad_to_max_length=False,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        max_chars_per_word=100,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "int32")
        super().__init__(**kwargs)
        # Keras would otherwise try to convert string inputs to the layer's dtype.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 ([CLS] and [SEP]); got {max_length}")
        self.max_length = int(max_length)
        self.lowercase = bool(lowercase)
        self.pad_to_max_length = bool(pad_to_max_length)
        self.cls_token, self.sep_token = cls_token, sep_token
        self.pad_token, self.unk_token = pad_token, unk_token
        self.max_chars_per_word = int(max_chars_per_word)
        self._vocabulary_path = None
        self.vocabulary = None
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)

    # -- vocabulary ------------------------------------------------------------

    def set_vocabulary(self, vocabulary):
        """Uses a vocabulary file path or a list of tokens."""
        if isinstance(vocabulary, (str, os.PathLike)):
            path = os.fspath(vocabulary)
            tokens = read_vocabulary(path)
        else:
            tokens = [str(t) for t in vocabulary]
            path = self._write_owned_vocabulary(tokens)
        for name in ("cls_token", "sep_token", "pad_token", "unk_token"):
            if getattr(self, name) not in tokens:
                raise ValueError(
                    f"vocabulary {path}: the {name} {getattr(self, name)!r} is missing"
                )
        seen = {}
        for line, token in enumerate(tokens, start=1):
            if token in seen:
                raise ValueError(
                    f"vocabulary {path}:{line}: token {token!r} repeats line {seen[token]}; "
                    "tokens are not unique"
                )
            seen[token] = line
        self.vocabulary = tokens
        self._vocabulary_path = path
        ids = {token: i for i, token in enumerate(tokens)}
        self.cls_id, self.sep_id = ids[self.cls_token], ids[self.sep_token]
        self.pad_id = ids[self.pad_token]
        # A file-backed table: tf.saved_model exports the file as an asset.
        self._table = tf.lookup.StaticVocabularyTable(
            tf.lookup.TextFileInitializer(
                path,
                key_dtype=tf.string,
                key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
                value_dtype=tf.int64,
                value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            ),
            num_oov_buckets=1,
        )
        self._wordpiece = tf_text.WordpieceTokenizer(
            self._table,
            suffix_indicator="##",
            max_bytes_per_word=self.max_chars_per_word,
            token_out_type=tf.int64,
            unknown_token=self.unk_token,
        )

    @property
    def lookup_table(self):
        """The vocabulary's tf.lookup table (a resource a SavedModel must track)."""
        return self._table

    @property
    def vocabulary_size(self):
        return len(self.vocabulary)

    @property
    def vocabulary_path(self):
        return self._vocabulary_path

    @staticmethod
    def _write_owned_vocabulary(tokens):
        # The table reads its file lazily and SavedModel export copies it, so the file
        # must outlive the call that gave us the tokens (e.g. a .keras archive's
        # temporary asset folder); it is removed when the process exits.
        directory = tempfile.mkdtemp(prefix="samtone_vocab_")
        _OWNED_DIRS.append(directory)
        path = os.path.join(directory, "vocab.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(token + "\n" for token in tokens))
        return path

    # -- tokenisation --------------------------------------------------------------

    def words(self, texts):
        """tf.string [B] -> ragged tf.string [B, (words)] after cleaning and splitting."""
        texts = tf.convert_to_tensor(texts, tf.string)
        texts = tf.strings.regex_replace(texts, _DROPPED, "")
        texts = tf.strings.regex_replace(texts, _WHITESPACE, " ")
        if self.lowercase:
            texts = tf.strings.lower(texts, encoding="utf-8")
            texts = tf_text.normalize_utf8(texts, "NFD")
            texts = tf.strings.regex_replace(texts, r"\p{Mn}", "")
        words, _, _ = tf_text.regex_split_with_offsets(texts, _DELIMITERS, _KEEP_DELIMITERS)
        return words

    def tokenize(self, texts):
        """tf.string [B] -> ragged int64 [B, (wordpieces)], no special tokens, no truncation."""
        if self.vocabulary is None:
            raise ValueError("WordPieceTokenizer has no vocabulary; call set_vocabulary()")
        pieces = self._wordpiece.tokenize(self.words(texts))
        return pieces.merge_dims(1, 2)

    def call(self, texts):
        texts = tf.convert_to_tensor(texts, tf.string)
        if texts.shape.rank != 1:
            raise ValueError(f"WordPieceTokenizer expects texts of shape [B]; got {texts.shape}")
        pieces = self.tokenize(texts)[:, : self.max_length - 2]
        batch = tf.shape(texts, out_type=tf.int64)[0]
        cls = tf.fill([batch, 1], tf.constant(self.cls_id, tf.int64))
        sep = tf.fill([batch, 1], tf.constant(self.sep_id, tf.int64))
        packed = tf.concat([cls, pieces, sep], axis=1)
        length = self.max_length if self.pad_to_max_length else None
        shape = None if length is None else [None, length]
        token_ids = packed.to_tensor(default_value=self.pad_id, shape=shape)
        padding_mask = tf.sequence_mask(packed.row_lengths(), tf.shape(token_ids)[1])
        return {"token_ids": tf.cast(token_ids, tf.int32), "padding_mask": padding_mask}

    def compute_output_spec(self, texts):
        length = self.max_length if self.pad_to_max_length else None
        batch = texts.shape[0]
        return {
            "token_ids": keras.KerasTensor((batch, length), dtype="int32"),
            "padding_mask": keras.KerasTensor((batch, length), dtype="bool"),
        }

    # -- saving ----------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            max_length=self.max_length,
            lowercase=self.lowercase,
            pad_to_max_length=self.pad_to_max_length,
            cls_token=self.cls_token,
            sep_token=self.sep_token,
            pad_token=self.pad_token,
            unk_token=self.unk_token,
            max_chars_per_word=self.max_chars_per_word,
        )
        return config  # the vocabulary is saved as an asset (save_assets)

    def save_assets(self, dir_path):
        with open(os.path.join(dir_path, "vocab.txt"), "w", encoding="utf-8") as f:
            f.write("".join(token + "\n" for token in self.vocabulary))

    def load_assets(self, dir_path):
        self.set_vocabulary(read_vocabulary(os.path.join(dir_path, "vocab.txt")))
