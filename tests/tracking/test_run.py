"""The model a run logs (stepjepa/tracking/run.py `log_hf_model`): what the registry's
champion serves through `mlflow.pyfunc`."""

from __future__ import annotations

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


def test_the_logged_model_answers_chat_messages_through_its_chat_template(
    tiny_model_dir, tmp_path, monkeypatch, migrated_mlflow
):
    """Issue 32: `pyfunc.predict` took a raw string without the chat template and the tiny
    model echoed the prompt; the model is an MLflow chat model (`llm/v1/chat`)."""
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stepjepa.tracking import artifact_location
    from stepjepa.tracking.run import log_hf_model

    store = migrated_mlflow(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(store)
    # Artifacts beside the store, as the pipeline's experiments keep them (MLflow's default,
    # ./mlruns, is the checkout when pytest runs there).
    experiment = mlflow.MlflowClient().create_experiment("chat", artifact_location=artifact_location(store))
    run_id = mlflow.MlflowClient().create_run(experiment).info.run_id
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    uri = log_hf_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, run_id)

    model = mlflow.pyfunc.load_model(uri)
    assert model.metadata.metadata["task"] == "llm/v1/chat"
    (answer,) = model.predict({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8})
    message = answer["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    assert QUESTION not in message["content"], "the prompt is echoed, not answered"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True)
    assert answer["usage"]["prompt_tokens"] == len(prompt["input_ids"]), "the chat template was not applied"
