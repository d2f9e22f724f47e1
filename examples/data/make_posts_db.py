"""Builds posts.sqlite from stories.csv: a table shaped like the Reddit dump the article
queried (title, subreddit, score, created_utc), for pipelines/sql-titles.toml.

usage: python3 examples/data/make_posts_db.py   (writes examples/data/posts.sqlite)
"""
import csv
import os
import sqlite3

here = os.path.dirname(os.path.abspath(__file__))
path = os.path.join(here, "posts.sqlite")
if os.path.exists(path):
    os.remove(path)
db = sqlite3.connect(path)
db.execute("CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT, subreddit TEXT,"
           " score INTEGER, created_utc INTEGER)")
with open(os.path.join(here, "stories.csv"), newline="", encoding="utf-8") as f:
    for i, row in enumerate(csv.DictReader(f)):
        db.execute("INSERT INTO posts (title, subreddit, score, created_utc) VALUES (?, ?, ?, ?)",
                   (row["title"], ["AskReddit", "WritingPrompts"][i % 2], (i * 37) % 101,
                    1_500_000_000 + i * 86_400))
db.commit()
db.execute("VACUUM")
db.close()
