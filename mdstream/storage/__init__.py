"""PostgreSQL at the edge: connections, migrations, the tables mdstream writes and history reads.
It may import the core, settings, services (for addresses) and asyncpg."""
