"""Storage at the edges: PostgreSQL and friends (asyncpg)."""
