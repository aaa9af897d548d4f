"""The drive boundary: relayd's adapter over Aliyun Drive (aligo) and what it needs to run headless."""
