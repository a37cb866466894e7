import pyarrow as pa
import pytest

from lumos.schemas import images


def test_id_is_stable_and_depends_on_source_and_key():
    a = images.make_id("laion", "http://x/1.jpg")
    assert a == images.make_id("laion", "http://x/1.jpg")
    assert a != images.make_id("coyo", "http://x/1.jpg")
    assert a != images.make_id("laion", "http://x/2.jpg")
    assert len(a) == 24


def test_validate_accepts_the_schema_and_names_every_problem():
    images.validate(images.IMAGES_SCHEMA)
    bad = images.IMAGES_SCHEMA.remove(images.IMAGES_SCHEMA.get_field_index(images.SHA256))
    bad = bad.set(bad.get_field_index(images.WIDTH), pa.field(images.WIDTH, pa.string()))
    with pytest.raises(images.SchemaError) as err:
        images.validate(bad)
    assert "missing column 'sha256'" in str(err.value)
    assert "column 'width' is string, expected int32" in str(err.value)


def test_job_record_round_trips_through_schema_metadata():
    schema = images.images_schema({"job": {"source": "laion", "min_size": 512}})
    assert images.job_of(schema) == {"job": {"source": "laion", "min_size": 512}}
    assert images.job_of(images.IMAGES_SCHEMA) == {}
