"""PostgreSQL at the edge: connections, schema migrations, and the tables mdstream writes."""
