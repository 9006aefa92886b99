"""The tokenize stage: chat formats (:mod:`.formats`) and the encoder that writes ``tokens/`` (:mod:`.encode`)."""

from longalign.tokenize.encode import TokenizeConfig, TokenizeResult, load_tokens, tokenize_conversation, tokenize_file

__all__ = ["TokenizeConfig", "TokenizeResult", "load_tokens", "tokenize_conversation", "tokenize_file"]
