"""The rater's prompt (`data_tools.py rate`): one example, judged for accuracy and helpfulness, with a reply that
ends in a "Score: N" line (0 to 5), and the parser of that line."""

import re

RATING_PROMPT = """You are checking one example of a data set that teaches an AI assistant to follow instructions. \
Judge the response below: is it accurate (facts, arithmetic, code and reasoning are correct) and helpful (it does \
what the instruction asks, uses the input when there is one, and is complete without padding)?

Instruction:
{instruction}

Input:
{input}

Response:
{output}

Explain your judgement in at most three sentences. Then end your reply with a last line of the form "Score: N", \
where N is a number from 0 (wrong or useless) to 5 (accurate and fully helpful); half points such as 3.5 are \
allowed."""
REMINDER = ("\n\nAttempt {attempt}: an earlier reply did not end with the score line. The last line of your reply "
            "must be \"Score: N\" with N from 0 to 5.")
# The last line names the score: "Score: 4", "**Score:** 4.5", "score = 3/5", "Score: 2 out of 5."
SCORE_AT_END = re.compile(r"score\W{0,4}(\d+(?:\.\d+)?)\s*(?:/\s*5(?:\.0+)?|out of 5)?[\s*_`.)\]]*\Z", re.IGNORECASE)
MAX_SCORE = 5.0


def parse_score(reply: str) -> float | None:
    """The score a reply ends with (0-5), or None when its end names no score in that range."""
    match = SCORE_AT_END.search(reply.strip())
    if match is None:
        return None
    score = float(match.group(1))
    return score if 0 <= score <= MAX_SCORE else None
