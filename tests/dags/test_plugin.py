from ndid_links import NdidPlugin, browse_url


def test_plugin_registers_the_records_link():
    assert [link.name for link in NdidPlugin.global_operator_extra_links] == ["NDID records"]


def test_browse_urls():
    prefix = "s3://ndid/decisions/records/"
    assert browse_url("", prefix).startswith("https://s3.console.aws.amazon.com/s3/buckets/ndid?prefix=decisions/")
    assert browse_url("http://127.0.0.1:8333", prefix) == ""  # the local filer UI is closed on purpose
    assert browse_url("https://minio.example.com", prefix).startswith("https://minio.example.com/ndid?prefix=")


def test_pages_plugin_mounts_an_app_and_nav_entries():
    from ndid_pages import NdidPagesPlugin

    [mounted] = NdidPagesPlugin.fastapi_apps
    assert mounted["url_prefix"] == "/ndid"
    reserved = ("/api/v2", "/ui", "/execution", "/auth", "/pluginsv2")
    assert not mounted["url_prefix"].startswith(reserved)
    views = {v["url_route"]: v for v in NdidPagesPlugin.external_views}
    assert set(views) == {"ndid-review", "ndid-dashboard", "ndid-lookup"}
    assert all(v["href"].startswith("/ndid/") and v["category"] == "NDID" for v in views.values())


def test_every_page_and_api_route_refuses_an_anonymous_request():
    """Plugin apps are not protected by Airflow automatically: each route must say 401 itself."""
    from fastapi.routing import APIRoute
    from fastapi.testclient import TestClient
    from ndid_pages import app

    client = TestClient(app)
    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    assert len(routes) >= 9
    for route in routes:
        for method in route.methods:
            path = route.path
            response = client.request(method, path, params={"id": "s3://b/k.jpg", "ref": "k"},
                                      json={}, headers={"Accept": "text/html"}, follow_redirects=False)
            assert response.status_code == 401, (method, path, response.status_code)
            assert "sign in" in response.text.lower()
    assert client.get("/api/queue").json() == {"detail": "Not authenticated"}
    # (a forged token: 403 from the real api-server, tests/ui)
