"""Logging set-up and the metric logger's progress lines."""

import logging

from dinov2.logging import MetricLogger, setup_logging


def test_metric_logger_logs_progress_metrics_and_eta(tmp_path, caplog):
    logger = setup_logging(str(tmp_path), name="dinov2_test")
    logger.propagate = True
    metric_logger = MetricLogger(logger=logger)
    with caplog.at_level(logging.INFO, logger="dinov2_test"):
        for step in metric_logger.log_every(range(5), print_freq=2, header="Epoch 1"):
            metric_logger.update(loss=1.0 / (step + 1))
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split("]")[0] for line in lines[:3]] == ["Epoch 1 [1/5", "Epoch 1 [3/5", "Epoch 1 [5/5"]
    assert all("eta: 0:00:0" in line and "loss:" in line for line in lines[:3])
    assert "total time" in lines[-1]
    assert "Epoch 1 [5/5]" in (tmp_path / "logs" / "log.txt").read_text()
