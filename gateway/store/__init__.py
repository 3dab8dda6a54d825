"""The database: models, migrations, the alert book's SQL, chats."""
