"""Durable transcription jobs (D31): a queue in SQLite with audio and results as files beside it.

``store`` owns the directory and the database, ``runner`` runs queued jobs on the bulk lane.
"""
