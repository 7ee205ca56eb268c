"""What every service shares: settings, the database guard, migrations, HTTP app, health."""
