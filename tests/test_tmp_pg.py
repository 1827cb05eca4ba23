import flowtap
from flowtap.testing import capture, make_flow

def test_x(pg_url):
    with capture(config={"store": {"url": pg_url, "body_file_threshold": "1kb"}, "session": {"name": "m"}}) as cap:
        cap.feed(make_flow(url="https://api.example.com/users", method="POST", status=201),
                 make_flow(url="https://api.example.com/report", response_body=b"x" * 5000))
        cap.session.mark("hi")
        cap.feed(make_flow(url="https://cdn.example.com/x.png?q=1"))
    with flowtap.open_store(pg_url) as store:
        ss = store.sessions()
        print(ss)
        assert ss[0].flows == 3
        print([r.url for r in store.rows("~d api & ~m POST")])
        print([r.url for r in store.rows("~u x\\.png")])
        print([r.url for r in store.rows("~u '(?i)X\\.PNG'")])
        print([f.response.body[:3] for f in store.flows("~bs xxx")])
        print(store.events(ss[0].id))
        assert len(list(store.rows("~c 201"))) == 1
        assert len(list(store.rows("!~c 201"))) == 2
