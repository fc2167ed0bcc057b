"""`python -m backend.answer`: the answer process (child.py), started by `AnswerProcess`."""

from backend.answer.child import main

main()
