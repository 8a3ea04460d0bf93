"""The controller database's schema: SQLAlchemy Core tables and their Alembic migrations.

``tables`` is the schema at the newest revision (what ``fleet.store`` reads and writes);
``migrate`` brings any database to it at open, a database written before migrations existed
included; ``migrations/`` holds the revisions, shipped in the wheel as package data.
"""
