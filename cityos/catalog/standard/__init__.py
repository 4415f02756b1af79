"""Japan's standard municipal open datasets (自治体標準オープンデータセット)."""
