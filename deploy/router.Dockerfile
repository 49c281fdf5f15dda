# SGLang's router (`sglang-router`, the version tests/e2e runs against) in front of `moela serve`
# replicas; arguments are the router's (docs/deploy.md).
#   docker build -f deploy/router.Dockerfile -t moela-router:local deploy
FROM python:3.11-slim
RUN pip install --no-cache-dir sglang-router==0.3.2
USER 65534:65534
EXPOSE 8000 29000
ENTRYPOINT ["python", "-m", "sglang_router.launch_router"]
