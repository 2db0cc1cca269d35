import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModel

from penstock.engine.locator import locate_embedding_model
from penstock.retrieval.bert import load_bert

TEXTS = ["list directory contents", "A longer sentence about the weather in Paris today, and tomorrow too."]


def test_the_encoder_matches_transformers_bert_on_a_padded_batch() -> None:
    path = locate_embedding_model(None)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    encodings = tokenizer.encode_batch(TEXTS)
    width = max(len(e.ids) for e in encodings)
    ids = torch.zeros(len(TEXTS), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = torch.tensor(encoding.ids)
        mask[row, : len(encoding.ids)] = 1
    with torch.inference_mode():
        reference = AutoModel.from_pretrained(path, local_files_only=True).eval()(input_ids=ids, attention_mask=mask)
        ours = load_bert(path)(ids, mask)
    valid = mask.bool()
    assert torch.allclose(ours[valid], reference.last_hidden_state[valid], atol=1e-4)


def test_a_checkpoint_of_another_kind_is_refused(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"hidden_act": "relu"}')
    with pytest.raises(ValueError, match="only BERT"):
        load_bert(tmp_path)
