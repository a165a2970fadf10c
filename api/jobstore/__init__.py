"""The job store that the API and the workers share, without the web app.

    settings    NERN_* settings (one pydantic-settings class)
    db          engines, sessions, start-up migrations (Alembic, `migrations/`)
    models      the tables: tenants, API keys, jobs, metric points, artifacts
    crud        every read and write of those tables (conditional UPDATEs for state changes)
    states      job states and stages (enums), progress per stage, queue routing
    spec        the job spec (the library's FitConfig plus job fields)
    artifacts   the artifact folder: uploads, training state, results

Importing it pulls in SQLAlchemy and pydantic, never FastAPI or Celery.
"""
