"""Tiny random Hugging Face CLIP / SigLIP directories for the export tests (no downloads).

Each builder writes config.json + model.safetensors + preprocessor_config.json + tokenizer
files into a directory with save_pretrained, the way a real checkpoint looks on disk.
"""
from __future__ import annotations

import os

CORPUS = [
    "a photo of a cat", "a photo of a dog", "a diagram of the engine", "two cats on a red sofa",
    "the quick brown fox jumps over the lazy dog", "a painting of a harbour at night",
    "an aerial view of the city", "a close up of a flower", "people walking in the rain",
]


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_tokenizer():
    """A CLIP byte-level BPE tokenizer with CLIP's vocabulary layout (bytes, bytes + '</w>',
    merges, then <|startoftext|>, <|endoftext|> last) and a few merges."""
    from transformers import CLIPTokenizer

    chars = _bytes_to_unicode()
    vocab_list = chars + [c + "</w>" for c in chars]
    merges = [("o", "f</w>"), ("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>"),
              ("d", "o"), ("do", "g</w>"), ("p", "h"), ("ph", "o"), ("pho", "t"), ("phot", "o</w>")]
    for a, b in merges:
        vocab_list.append(a + b)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    return CLIPTokenizer(vocab=vocab, merges=list(merges))


def make_clip(path, image_size=32, patch=8, crop=None, shortest=None):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = clip_tokenizer()
    n = len(tok)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    bos = tok.convert_tokens_to_ids("<|startoftext|>")
    cfg = CLIPConfig(
        text_config=dict(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, eos_token_id=eos,
                         bos_token_id=bos, pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch),
        projection_dim=24)
    torch.manual_seed(0)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(path)
    tok.model_max_length = 16
    tok.save_pretrained(path)
    proc = CLIPImageProcessor(size={"shortest_edge": shortest or image_size},
                              crop_size={"height": crop or image_size, "width": crop or image_size})
    proc.save_pretrained(path)
    return os.fspath(path)


def siglip_tokenizer(dirname):
    """A real SiglipTokenizer over a tiny SentencePiece unigram model trained on CORPUS."""
    import sentencepiece as spm
    from transformers import SiglipTokenizer

    model_prefix = os.path.join(dirname, "spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4), model_prefix=model_prefix, vocab_size=48, model_type="unigram", hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        character_coverage=1.0, minloglevel=2)
    return SiglipTokenizer(model_prefix + ".model", model_max_length=16)


def make_siglip(path, image_size=32, patch=8, resample=2, workdir=None):
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    tok = siglip_tokenizer(workdir or os.fspath(path))
    cfg = SiglipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch))
    torch.manual_seed(0)
    model = SiglipModel(cfg).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-10.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    SiglipImageProcessor(size={"height": image_size, "width": image_size}, resample=resample).save_pretrained(path)
    return os.fspath(path)
