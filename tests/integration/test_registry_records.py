"""`medevents registry add`: records of the registries a package's checks read, written for
local use as another system would write them in production."""

from __future__ import annotations

import json

import pytest
from pymongo import MongoClient

from service.cli.main import main
from service.config import Settings


@pytest.fixture
def environment(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MONGODB_URL", settings.mongodb_url)
    monkeypatch.setenv("MONGODB_DB", settings.mongodb_db)
    monkeypatch.setenv("DATA_DIR", str(settings.data_dir))
    yield settings
    with MongoClient(settings.mongodb_url) as client:
        client.drop_database(settings.mongodb_db)


def test_records_are_written_and_read_back(environment, tmp_path, capsys) -> None:
    employees = [
        {"_id": "e1", "status": "APPROVED", "employee_type": "DOCTOR", "legal_entity_id": "le"},
        {"_id": "e2", "status": "DISMISSED", "employee_type": "DOCTOR", "legal_entity_id": "le"},
    ]
    path = tmp_path / "employees.json"
    path.write_text(json.dumps(employees))
    assert main(["registry", "add", "employees", str(path)]) == 0
    episode = tmp_path / "episode.json"
    episode.write_text(json.dumps({"_id": "ep1", "patient_id": "p", "status": "active"}))
    assert main(["registry", "add", "episodes", str(episode)]) == 0
    assert "2 employees written" in capsys.readouterr().out
    with MongoClient(environment.mongodb_url) as client:
        db = client[environment.mongodb_db]
        assert sorted(d["_id"] for d in db["employees"].find()) == ["e1", "e2"]
        assert db["episodes"].find_one({"_id": "ep1"})["status"] == "active"


def test_a_record_without_its_id_is_refused(environment, tmp_path, capsys) -> None:
    path = tmp_path / "division.json"
    path.write_text(json.dumps({"status": "ACTIVE"}))
    assert main(["registry", "add", "divisions", str(path)]) == 2
    assert "each record is an object with an _id" in capsys.readouterr().err
