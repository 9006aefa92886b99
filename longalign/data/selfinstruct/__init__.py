"""Self-Instruct over long documents: :mod:`.prompts` (what the generator is asked), :mod:`.parse` (reading and
checking its replies) and :mod:`.job` (the resumable generation job that writes ``data/long.jsonl``)."""

from longalign.data.selfinstruct.job import (
    DocumentJob,
    GenerateConfig,
    GenerateSummary,
    check_generate_config,
    failed_path,
    generate_long_data,
    generator_from_env,
    make_generator_client,
    run,
)
from longalign.data.selfinstruct.parse import (
    ParsedQuestions,
    ValidationLimits,
    answer_problem,
    clean_question,
    parse_questions,
    question_problem,
    validate_questions,
)
from longalign.data.selfinstruct.prompts import (
    N_QUESTIONS,
    TASK_TYPES,
    answer_prompt,
    fit_document,
    question_prompt,
    task_instruction,
    training_prompt,
)

__all__ = [
    "DocumentJob",
    "GenerateConfig",
    "GenerateSummary",
    "check_generate_config",
    "failed_path",
    "generate_long_data",
    "generator_from_env",
    "make_generator_client",
    "run",
    "ParsedQuestions",
    "ValidationLimits",
    "answer_problem",
    "clean_question",
    "parse_questions",
    "question_problem",
    "validate_questions",
    "N_QUESTIONS",
    "TASK_TYPES",
    "answer_prompt",
    "fit_document",
    "question_prompt",
    "task_instruction",
    "training_prompt",
]
