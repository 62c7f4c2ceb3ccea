"""The course's own tools, used by every notebook: fixed-size figures (viz), exercise checkers (check) and
their independent answers (exercises), and the writer of student notebooks (student).
"""
