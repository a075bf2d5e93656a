#!/usr/bin/env python3
"""Renders conversations with the chat templates the models publish (tokenizer_config.json "chat_template"), through
transformers' apply_chat_template, for tests/language/test_conversation.cpp to compare with mole's templates.

    .venv/bin/python tests/reference/check_chat_templates.py --tokenizer DIR --conversations IN.json --out OUT.json

IN.json: [{"template": "mistral_instruct" | "chatml" | "llama3", "messages": [{"role", "content"}, ...]}, ...];
an entry with "jinja" is rendered with that template instead (what `mole export` writes, chat_template.jinja).
OUT.json: {"transformers": VERSION, "text": [str, ...], "ids": [[ids], ...]}: apply_chat_template with
tokenize=False, and the ids transformers' sentencepiece backend (legacy=True, what mole follows; see
tests/reference/check_tokenizer.py) gives that text, without adding a BOS (the templates write their own).

The templates are those of the models' Hugging Face repositories, written out here since nothing can be
downloaded: Mistral-7B-Instruct-v0.2, Qwen2-7B-Instruct (chatml) and Meta-Llama-3-8B-Instruct (whose bos_token is
<|begin_of_text|>, passed to the template as the model's tokenizer_config.json does).
"""
import argparse, json, os

os.environ["HF_HUB_OFFLINE"] = "1"
import transformers

transformers.logging.set_verbosity_error()

TEMPLATES = {
    "mistral_instruct": (
        "{{ bos_token }}{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
        "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"),
    "chatml": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
        " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
        "{{ content }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
}
EXTRA = {"llama3": {"bos_token": "<|begin_of_text|>"}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--conversations", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(args.conversations, encoding="utf-8") as f:
        conversations = json.load(f)
    try:  # transformers 5
        from transformers.tokenization_utils_sentencepiece import SentencePieceBackend as Slow
    except ImportError:  # transformers 4
        from transformers import LlamaTokenizer as Slow
    tok = Slow.from_pretrained(args.tokenizer, legacy=True)
    texts, ids = [], []
    for c in conversations:
        template = c["jinja"] if "jinja" in c else TEMPLATES[c["template"]]
        text = tok.apply_chat_template(c["messages"], chat_template=template, tokenize=False,
                                       add_generation_prompt=c.get("add_generation_prompt", False),
                                       **({} if "jinja" in c else EXTRA.get(c["template"], {})))
        texts.append(text)
        ids.append(tok.encode(text, add_special_tokens=False))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"transformers": transformers.__version__, "text": texts, "ids": ids}, f)


if __name__ == "__main__":
    main()
