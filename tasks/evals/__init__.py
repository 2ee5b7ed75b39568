"""Scoring a model: MMLU (mmlu.py: next-token logits of the answer letters), HellaSwag
(hellaswag.py: completion likelihoods, as llm.c), and a judge model over HTTP scoring the
answers of an instruction-tuned run (judge.py)."""
